# One image for every process (web, workers, beat, Flower); the compose file picks the command.
FROM python:3.11-slim-bookworm

# Pango and HarfBuzz for WeasyPrint's PDFs; a font so reports render on a bare image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN pip install .

COPY . .
# Static files are collected at build time; the secret only satisfies settings for this step.
RUN DEBUG=0 SECRET_KEY=build-only-not-secret python manage.py collectstatic --noinput \
    && useradd --create-home --uid 1000 app \
    && mkdir -p /data/media && chown -R app /data

# Workers must not run as root (Celery warns, and a task exploit would own the container).
USER app
ENV MEDIA_ROOT=/data/media PORT=8000
EXPOSE 8000
CMD ["gunicorn", "config.wsgi:application", "-c", "config/gunicorn.py", "--bind", "0.0.0.0:8000"]
