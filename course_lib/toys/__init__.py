"""The course's toy tasks and data: skip these unless you want to see how an experiment is set up."""
