"""Optimisers over action sequences and the MPC controller; they see only an energy.

Importing the package registers every planner: `make_planner("cem", samples=300, ...)` (`policy`: the
plan a distilled policy proposes); the controller (`MPCController`), its surprise monitor
(`SurpriseMonitor`) and the fixed-rate loop (`ControlLoop`) come with it.
"""
from worldmodel.planners.base import (Bounds, Energy, Planner, PlanResult, make_planner,  # noqa: F401
                           planner_from_config, register_planner, PLANNERS)
from worldmodel.planners.cem import CEM  # noqa: F401
from worldmodel.planners.gradient import GradientPlanner  # noqa: F401
from worldmodel.planners.icem import ICEM, colored_noise  # noqa: F401
from worldmodel.planners.loop import ControlLoop  # noqa: F401
from worldmodel.planners.mpc import MPCController  # noqa: F401
from worldmodel.planners.mppi import MPPI  # noqa: F401
from worldmodel.planners.policy import PolicyPlanner, Proposing  # noqa: F401
from worldmodel.planners.surprise import SurpriseMonitor, Surprised  # noqa: F401
