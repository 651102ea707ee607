"""The spine of lathe: config schema, stage registry, runner and the `lathe` CLI."""
