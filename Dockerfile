# Worker and producer image. On GPU hosts the default torch wheel (CUDA build) is what we want.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY producer ./producer
COPY worker ./worker
COPY examples ./examples
RUN pip install --no-cache-dir "torch>=2.4" && pip install --no-cache-dir ".[demo,fast,metrics,dashboard]"
ENV PYTHONUNBUFFERED=1
CMD ["python", "-m", "worker"]
