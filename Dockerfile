# kline-collector: the API and the scheduler in one process.
# Give it DATABASE_URL for a real PostgreSQL; without it the embedded server keeps its data in
# /data/postgres (mount a volume there). Run with an init (`docker run --init`) so a killed
# embedded PostgreSQL is reaped.
FROM python:3.11-slim

RUN pip install --no-cache-dir uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY service ./service
COPY migrations ./migrations
COPY alembic.ini ./
RUN uv sync --locked --no-dev

ENV PATH="/app/.venv/bin:$PATH" \
    HOST=0.0.0.0 \
    PORT=8000 \
    EMBEDDED_PG_DIR=/data/postgres
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/health')"
CMD ["kline-collector", "serve"]
