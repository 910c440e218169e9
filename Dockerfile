# CPU-only image of the proxy. Build: docker build -t llm-cost-proxy .
# Run:   docker run -p 8080:8080 -e OPENAI_API_KEY=sk-... -v $PWD/config.toml:/app/config.toml llm-cost-proxy
# Demo:  docker run -p 8080:8080 llm-cost-proxy python -m proxy demo --host 0.0.0.0 --port 8080
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /app

# CPU-only torch first, so sentence-transformers does not pull the multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install .

COPY config.toml ./config.toml
COPY rules ./rules

EXPOSE 8080
CMD ["python", "-m", "proxy", "serve", "--config", "config.toml", "--host", "0.0.0.0", "--port", "8080"]
