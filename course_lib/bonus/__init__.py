"""Optional extras beyond the course's path: fast versions of ideas the notebooks teach in plain PyTorch. Nothing in course_lib imports them."""
