# rankserve production image: NVIDIA's Triton server base (Triton 2.51 = release 24.10, CUDA 12.6),
# the project with the `gpu` extra (cupy-cuda12x, faiss-gpu-cu12, numba-cuda), serving the same
# model_repository/ layout as the embedded default. Not buildable on the project's CI machines
# (no Docker engine there); see README "Run on a GPU".
#
#   docker build -t rankserve:gpu .
#   docker run --gpus all -p 8000:8000 -v $PWD/model_repository:/app/model_repository \
#       -v $PWD/.rankserve:/app/.rankserve rankserve:gpu
FROM nvcr.io/nvidia/tritonserver:24.10-py3

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    # use the image's own Triton rather than the one in the nvidia-pytriton wheel
    RANKSERVE_TRITON_BIN=/opt/tritonserver/bin/tritonserver \
    RANKSERVE_HOST=0.0.0.0 \
    RANKSERVE_TRITON_KIND=gpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY serving ./serving
COPY kernels ./kernels
COPY training ./training

# A venv whose bin/ comes first on PATH: Triton's python backend stub runs the models in it.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install ".[gpu]"
ENV PATH=/opt/venv/bin:$PATH

EXPOSE 8000 8001 8002
# First start builds the demo data and models (on the GPU) unless model_repository/ is mounted.
CMD ["rankserve", "serve"]
