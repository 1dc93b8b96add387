FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api api
COPY workers workers
COPY ledger_core ledger_core
COPY devstack devstack
COPY migrations migrations
# celeryconfig is a top-level module (pyproject's py-modules); alembic.ini and migrations
# serve `alembic upgrade head`; gunicorn reads gunicorn.conf.py from the working directory.
COPY celeryconfig.py alembic.ini gunicorn.conf.py Procfile ./
RUN pip install --no-cache-dir . && useradd --system --no-create-home ledger
USER ledger
# The API; Flower; a Celery worker's metrics (METRICS_PORT).
EXPOSE 8000 5555 9100
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--worker-class", "gthread", "--threads", "16", "--graceful-timeout", "30", "--timeout", "60", "api:create_app()"]
