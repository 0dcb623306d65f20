# The stub trainer's image (test tooling, never shipped): the trainer's contract and its light modules,
# without torch, so operator tests start pods in seconds. `make images` builds it with the other two.
# The pins are the trainer extra's (pyproject.toml) for what the stub imports: the S3 client, the
# metrics registry, and the Hub and config checks of hf:// models (transformers without torch).
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install \
      "pydantic==2.14.3" "boto3==1.44.5" "prometheus-client==0.26.0" \
      "huggingface-hub==2.4.0" "transformers==5.23.0" \
 && /opt/venv/bin/python -m pip uninstall -y -q pip setuptools wheel
COPY contract/finetune_contract /opt/finetune/finetune_contract
COPY trainer_image/finetune_trainer /opt/finetune/finetune_trainer
COPY localcluster/trainer_stub.py /opt/finetune/trainer_stub.py
RUN /opt/venv/bin/python -m compileall -q /opt/finetune
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/finetune \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1
USER 65532:65532
WORKDIR /scratch
ENTRYPOINT ["python", "-m", "trainer_stub"]
CMD ["train", "--config", "/etc/finetune/config.json"]
