# The reconciler's own image: the `reconcile` command, the daemon, and the endpoint router
# (`python -m reconciler.router --config FILE`), which the targets run per endpoint.
# BASE_IMAGE: any image with Python 3.11+ and venv; where nothing can be pulled, the Docker
# target builds this file on its locally built base image.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A wheelhouse in the build context (wheels/) lets the image build offline; without it pip
# uses the package index.
COPY wheels* /wheels/
COPY pyproject.toml README.md /src/
COPY schemas /src/schemas
COPY reconciler /src/reconciler
RUN python3 -m venv /opt/reconciler \
    && if ls /wheels/*.whl >/dev/null 2>&1; then \
         /opt/reconciler/bin/pip install --no-cache-dir --no-index --find-links /wheels /src; \
       else \
         /opt/reconciler/bin/pip install --no-cache-dir /src; \
       fi \
    && rm -rf /src /wheels

ENV PATH=/opt/reconciler/bin:$PATH
# Not root: the router and the reconciler need no privilege inside the container.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["reconcile"]
CMD ["--help"]
