// What a Node.js script may use without @types/node, for the sandbox's TypeScript (eval/languages.py).
declare var console: any;
declare var process: any;
declare var require: any;
