# Lifeline web and worker image (the same image runs both).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 1000 lifeline
WORKDIR /app
COPY pyproject.toml README.md ./
COPY lti_tool ./lti_tool
COPY templates ./templates
RUN pip install .
USER lifeline
EXPOSE 8000
CMD ["lifeline", "serve", "--host", "0.0.0.0", "--port", "8000"]
