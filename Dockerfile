FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api api
COPY workers workers
COPY ledger_core ledger_core
COPY devstack devstack
COPY migrations migrations
COPY celeryconfig.py alembic.ini Procfile ./
RUN pip install --no-cache-dir . && useradd --system --no-create-home ledger
USER ledger
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--worker-class", "gthread", "--threads", "8", "api:create_app()"]
