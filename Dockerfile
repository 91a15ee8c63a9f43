# CUDA image for the numbered scripts. Build and run (README):
#   docker build -t nemo-repro .
#   docker run --gpus all -v $PWD/results:/nemo/results nemo-repro make demo
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip make git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /nemo
COPY requirements.txt Makefile ./
RUN make .venv/installed
COPY . .
ENV PYTHONPATH=/nemo
CMD ["make", "test"]
