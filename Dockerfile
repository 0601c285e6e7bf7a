# The projector image: `projections` with its migrations, running as an unprivileged user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY projections ./projections
COPY migrations ./migrations
RUN pip install . && useradd --system --uid 10001 projections
USER projections

EXPOSE 9108
ENTRYPOINT ["projections"]
CMD ["--help"]
