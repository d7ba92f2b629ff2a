"""What people look at: training curves and evaluation summaries as PNG, videos."""
from worldmodel import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "plot_training": "worldmodel.report.plots",
    "plot_eval": "worldmodel.report.plots",
    "plot_compare": "worldmodel.report.plots",
    "write_video": "worldmodel.report.video",
})
