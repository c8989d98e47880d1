"""Ray's job submission SDK (``ray.job_submission``): submit shell commands to a cluster's
job API and follow them. ``JobSubmissionClient`` talks HTTP to the head's server."""

from ember.job_submission.sdk import JobSubmissionClient
from ember.jobs.common import DriverInfo, JobDetails, JobErrorType, JobInfo, JobStatus, JobType

__all__ = ["DriverInfo", "JobDetails", "JobErrorType", "JobInfo", "JobStatus", "JobSubmissionClient", "JobType"]
