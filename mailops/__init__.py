"""mailops: build, run and watch a production mail server from notebooks."""
from .params import ParamsError, load_params
from .plan import ApplyResult, Plan, Status, StepFailed
from .session import Session, finish, open_session

__all__ = ["ApplyResult", "ParamsError", "Plan", "Session", "Status", "StepFailed",
           "finish", "load_params", "open_session"]
__version__ = "0.1.0"
