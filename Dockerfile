# One image for the API, the workers and beat. For GPU workers build with
#   docker build --build-arg TF_PACKAGE="tensorflow[and-cuda]>=2.16,<2.22" .
FROM python:3.11-slim
ARG TF_PACKAGE=""
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api api
COPY worker worker
COPY model model
COPY db db
COPY migrations migrations
COPY leukoscreen leukoscreen
# `leukoscreen bench` and `bench-queries` run from the image too.
COPY bench bench
RUN pip install . && if [ -n "$TF_PACKAGE" ]; then pip install "$TF_PACKAGE"; fi
RUN useradd --create-home leukoscreen && mkdir -p /data && chown leukoscreen /data
USER leukoscreen
EXPOSE 8000
CMD ["leukoscreen", "serve", "--host", "0.0.0.0"]
