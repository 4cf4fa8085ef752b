"""The runner of a local run: Beam's FnApiRunner, given the run's options for its workers.

pipeline.run sends a DirectRunner run straight to FnApiRunner (see run.in_process_runner).
Beam builds a runner named in --runner without arguments, and an FnApiRunner built so hands
its worker processes (--direct_running_mode multi_processing) no pipeline options at all:
there Beam's file systems would run without --s3_endpoint_url, credentials and the other
--s3_* / --aws_* flags (an s3:// run fails to list with "Unable to locate credentials",
after minutes of retries). Beam's DirectRunner passes every option to its FnApiRunner as
provisioning info; this runner does the same. In-process workers (in_memory,
multi_threading) share the launcher's options either way (beam.Pipeline sets them for
FileSystems in this process).
"""
from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo, FnApiRunner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.runners.runner import PipelineResult

#: --runner value that selects it.
LOCAL_RUNNER = f"{__name__}.OptionsFnApiRunner"


def provision_info(options: PipelineOptions) -> ExtendedProvisionInfo:
    """What FnApiRunner tells its workers: every option of the run (as DirectRunner sends them)."""
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))


class OptionsFnApiRunner(FnApiRunner):
    """FnApiRunner whose worker processes get the run's pipeline options."""

    def run_pipeline(self, pipeline, options: PipelineOptions) -> PipelineResult:  # noqa: ANN001
        return FnApiRunner(provision_info=provision_info(options)).run_pipeline(pipeline, options)
