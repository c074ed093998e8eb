"""Models of other formats behind tinysora's pipeline call (``diffusers_video.py``:
diffusers-format text-to-video directories, e.g. ModelScope's)."""
