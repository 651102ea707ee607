# The lathe image: every stage's CLI (the training Job, the Airflow KubernetesPodOperators, the
# SparkApplication's driver and executors). Build: docker build -t ghcr.io/lathe-ml/lathe:0.1.0 .
# Written for k8s/base; not built on the development machines (no container engine there).
FROM python:3.11.7-slim-bookworm

# Java for Spark; bubblewrap for the HumanEval sandbox and the toolchains of its languages (Node.js and
# TypeScript, javac, g++, rustc: humaneval-js, -ts, -java, -cpp, -rust)
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends openjdk-17-jdk-headless bubblewrap nodejs npm g++ rustc make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/lathe
COPY requirements/ requirements/
RUN python -m venv .venv \
 && .venv/bin/pip install -q --upgrade pip \
 && .venv/bin/pip install -q -r requirements/lock.txt \
 && .venv/bin/pip install -q --no-deps -r requirements/no-deps.txt
COPY . .
RUN .venv/bin/pip install -q --no-deps --no-build-isolation -e . && mkdir -p /opt/lathe/runs && chown 1000:1000 /opt/lathe/runs \
 && npm ci --prefix eval/toolchains --ignore-scripts --no-audit --no-fund --loglevel=error

ENV PATH=/opt/lathe/.venv/bin:$PATH \
    PYSPARK_PYTHON=/opt/lathe/.venv/bin/python \
    SPARK_HOME=/opt/lathe/.venv/lib/python3.11/site-packages/pyspark \
    WANDB_DIR=/tmp
USER 1000:1000
ENTRYPOINT ["lathe"]
