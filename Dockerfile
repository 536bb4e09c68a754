# Worker and producer image. On GPU hosts the default torch wheel (CUDA build) is what we want.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY producer ./producer
COPY worker ./worker
COPY examples ./examples
# torch pinned to what CI tests (pyproject allows >=2.4); from PyPI, its CUDA build: match it to the fleet's drivers
RUN pip install --no-cache-dir "torch==2.13.0" && pip install --no-cache-dir ".[demo,fast,metrics,dashboard]"
ENV PYTHONUNBUFFERED=1
# not root (the Kubernetes Deployment runs it as this uid, with a read-only root and a /tmp of its own);
# nothing in /app is written at run time
USER 10001:10001
CMD ["python", "-m", "worker"]
