# dogclf serve in a container: a SageMaker "bring your own container" image, and a plain local server.
#
# Build from the repository root, with a model directory written by `dogclf train` inside the build context:
#
#   docker build --build-arg MODEL=models/woof -t dogclf-serve .
#   docker run --rm -p 8080:8080 dogclf-serve              # then open http://127.0.0.1:8080/
#
# A model trained on a plugin backbone needs the plugin in the image, e.g.
#   --build-arg PLUGINS=./examples/plugin-efficientnet-lite
#
# SageMaker runs the image as `docker run IMAGE serve` and talks to port 8080 (GET /ping, POST /invocations).
# When the SageMaker model has a ModelDataUrl (for example the model.tar.gz of `dogclf package`), SageMaker unpacks
# it into /opt/ml/model over the copy baked in here; the server reads config.json and model.safetensors from there
# and ignores code/. Extra `dogclf serve` flags can follow the image name: `docker run IMAGE --max-batch-size 16`.
# See docs/serving.md.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1

# The CPU builds of torch and torchvision, from PyTorch's own index (PyPI's torchvision wheel is a CUDA build).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 torchvision==0.28.0

# dogclf itself, with the tested versions of its other dependencies. Only what the install needs is copied.
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY dogclf ./dogclf
COPY examples ./examples
ARG PLUGINS=""
RUN pip install -c constraints.txt . ${PLUGINS} && dogclf --version

# The model to serve (a directory with config.json and model.safetensors).
ARG MODEL=model
COPY ${MODEL} /opt/ml/model

RUN useradd --create-home --uid 1000 dogclf
USER dogclf
WORKDIR /home/dogclf
EXPOSE 8080

# `serve` (SageMaker's argument) is dropped; any other arguments are passed on to `dogclf serve`.
# exec: dogclf is PID 1 and gets SIGTERM, finishes requests in flight and stops.
ENTRYPOINT ["/bin/sh", "-c", "[ \"$1\" = serve ] && shift; exec dogclf serve --model /opt/ml/model --host 0.0.0.0 --port 8080 \"$@\"", "dogclf-entrypoint"]
