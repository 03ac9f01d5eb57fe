# The project's Airflow image, used by every Airflow service of docker-compose.yaml and by the
# emulator service: the official Airflow 3.3.2 image (Python 3.11, the version requirements.txt is
# compiled and tested for) with the project's pinned requirements, its DAGs and plugins (the
# healthimaging package), the HealthImaging emulator and the stack's init step (stack/).
#
#   docker compose build            (or: docker build -t healthimaging-airflow:3.3.2 .)
ARG PYTHON_VERSION=3.11
FROM apache/airflow:3.3.2-python${PYTHON_VERSION}

ARG AIRFLOW_VERSION=3.3.2

# The exact set `make test` runs against. Keeping apache-airflow on the command line makes pip refuse
# anything that would change the image's Airflow.
COPY --chown=airflow:0 requirements.txt /opt/airflow/requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/airflow/requirements.txt

COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 healthimaging_emulator/ /opt/airflow/healthimaging_emulator/
COPY --chown=airflow:0 stack/ /opt/airflow/stack/

# `python -m stack.init` (airflow-init) and `python -m healthimaging_emulator` (the emulator service);
# stack.hostname too, for several workers on one host without containers.
ENV PYTHONPATH=/opt/airflow

# Folders the compose file mounts (created here so that named volumes start owned by airflow).
RUN mkdir -p /opt/airflow/manifests /opt/airflow/emulator-state /opt/airflow/config
