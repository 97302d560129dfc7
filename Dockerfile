# rankserve production image: NVIDIA's Triton server base (Triton 2.51 = release 24.10, CUDA 12.6),
# the project with the `gpu` extra (cupy-cuda12x, faiss-gpu-cu12, numba-cuda), the demo data and
# models built in (seed repository under /app/seed; the KubeRay manifest copies it once into the
# shared model repository volume). Not buildable on the project's CI machines (no Docker engine
# there); tests/unit/test_deploy.py checks it statically. See docs/operations/gpu.md.
#
# It runs as an unprivileged user, rankserve (uid and gid 10001, the manifest's runAsUser and runAsGroup), who owns
# only what the embedded default writes (the data folder and the model repository); the code stays root's.
#
#   docker build -t rankserve:gpu .
#   docker run --gpus all -p 8000:8000 -e RANKSERVE_AUTH=keys rankserve:gpu   # one node: Triton + Ray + Serve
#   docker exec <container> rankserve keys add NAME --role rank                # a key for the API (printed once)
FROM nvcr.io/nvidia/tritonserver:24.10-py3

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    # use the image's own Triton rather than the one in the nvidia-pytriton wheel
    RANKSERVE_TRITON_BIN=/opt/tritonserver/bin/tritonserver \
    RANKSERVE_TRITON_KIND=gpu \
    RANKSERVE_HOST=0.0.0.0 \
    RANKSERVE_DATA_DIR=/app/.rankserve \
    RANKSERVE_MODEL_REPOSITORY=/app/model_repository \
    # a container's logs belong on stdout (docker logs, kubectl logs), not in a file inside it
    RANKSERVE_VERBOSE=true

WORKDIR /app
COPY pyproject.toml README.md ./
COPY serving ./serving
COPY kernels ./kernels
COPY training ./training
COPY loadtest ./loadtest
COPY benchmarks ./benchmarks
COPY model_repository/README.md ./model_repository/README.md

# A venv whose bin/ comes first on PATH: Triton's python backend stub runs the models in it.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install ".[gpu]"
ENV PATH=/opt/venv/bin:$PATH

# The demo marketplace and both models, trained at build time: the seed repository.
RUN RANKSERVE_MODEL_REPOSITORY=/app/seed/model_repository rankserve build \
 && cp -r /app/seed/model_repository/. /app/model_repository/

# The runtime user, and what it may write; a volume mounted over either folder must be writable by uid 10001.
RUN groupadd --gid 10001 rankserve \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin rankserve \
 && chown -R 10001:10001 /app/.rankserve /app/model_repository
USER 10001:10001

EXPOSE 8000 9000
CMD ["rankserve", "serve"]
