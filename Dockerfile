# kline-collector: the API, the scheduler and collection in one process (docs/deployment.md: "In a container").
# Give it DATABASE_URL (and SECRET_KEY) for a real PostgreSQL; without it an embedded PostgreSQL keeps its
# data, and the generated token key, in the /data volume.

# ---- build: the locked dependencies and the project, into /app/.venv --------------------------------------
FROM python:3.11-slim-bookworm AS build

# uv pinned by version: the same uv resolves the same uv.lock on every build.
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv

# Bytecode compiled once here, not by the non-root user at run time (it could not write it);
# copies rather than hard links, since the cache is not in the image; the image's own Python, never a download.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /app
# Dependencies first, in a layer of their own: code changes do not reinstall them.
COPY pyproject.toml uv.lock README.md .python-version ./
RUN uv sync --locked --no-dev --no-install-project
COPY alembic.ini ./
COPY migrations ./migrations
COPY service ./service
RUN uv sync --locked --no-dev

# ---- runtime: Python, tini, the virtualenv and the app; no uv, no build tools ----------------------------
FROM python:3.11-slim-bookworm AS runtime

# tini as PID 1 forwards SIGTERM to the service and reaps what dies orphaned (a killed embedded
# PostgreSQL's processes). A fixed uid/gid lets a bind-mounted /data be chowned on the host.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /data/postgres \
    && chown -R app:app /data \
    && install -d -m 0700 -o app -g app /run/user/10001

WORKDIR /app
# Same path as in the build stage: the virtualenv's scripts and its editable install of the project point
# here. Owned by root: the service cannot change its own code.
COPY --from=build /app /app

# HOST/PORT: the server listens on every interface, on $PORT (Heroku and most platforms set it).
# XDG_RUNTIME_DIR: the embedded PostgreSQL keeps its lock file there (a private directory made above).
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    EMBEDDED_PG_DIR=/data/postgres \
    XDG_RUNTIME_DIR=/run/user/10001

# The embedded PostgreSQL's data and its token key (/data/postgres.secret_key); unused with DATABASE_URL.
VOLUME ["/data"]

USER 10001:10001
EXPOSE 8000

# The first start runs initdb and the migrations: unhealthy answers only count after the start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["kline-collector", "healthcheck"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["kline-collector", "serve"]
