# syntax=docker/dockerfile:1
# aurora-sync: the image the ECS tasks run. Two stages: the build stage resolves and installs the package
# into a virtualenv with the repository's constraints; the runtime stage gets only that virtualenv, the
# dlt configuration and an unprivileged user. The base is pinned to an exact Python patch release on
# Debian bookworm (slim); bump both FROM lines together (docs/deployment.md).

FROM python:3.11.14-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

# Dependency metadata first, so that code changes do not invalidate the layer cache of this step.
COPY pyproject.toml README.md constraints.txt ./
COPY sources/ sources/
COPY pipelines/ pipelines/
COPY replica/ replica/
COPY runner/ runner/
# Every dependency ships a wheel (psycopg2-binary, pyarrow, duckdb...), so no compiler is needed even here.
RUN pip install --no-cache-dir -c constraints.txt . \
    && pip check


FROM python:3.11.14-slim-bookworm AS runtime

ARG APP_UID=10001
ARG APP_GID=10001

# HOME and the caches point into /tmp: the task's root filesystem is read-only and /tmp is the writable,
# task-scoped volume (ECS mounts it; DLT_DATA_DIR is dlt's working directory there).
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp/home \
    XDG_CACHE_HOME=/tmp/home/.cache \
    DLT_DATA_DIR=/tmp/dlt

RUN groupadd --system --gid "${APP_GID}" aurora \
    && useradd --system --uid "${APP_UID}" --gid aurora --home-dir /tmp/home --no-create-home \
        --shell /usr/sbin/nologin aurora \
    && mkdir -p /tmp/dlt /tmp/home/.cache \
    && chown -R "${APP_UID}:${APP_GID}" /tmp/dlt /tmp/home

COPY --from=build /opt/venv /opt/venv

# dlt reads ./.dlt relative to the working directory. Only config.toml: secrets come from Vault at run time.
WORKDIR /app
COPY .dlt/config.toml .dlt/config.toml

# Fargate populates a bind-mounted volume from the image's directory declared here, with its ownership,
# so /tmp/dlt and /tmp/home stay writable by the unprivileged user under a read-only root filesystem.
VOLUME ["/tmp"]

USER ${APP_UID}:${APP_GID}

# No server, no health endpoint: a run's health is its exit code (0 ok, 1 failure, 2 configuration,
# 3 lock held, 4 drift), which ECS records and the monitoring alarms on.
HEALTHCHECK NONE

ENTRYPOINT ["aurora-sync"]
CMD ["doctor"]
