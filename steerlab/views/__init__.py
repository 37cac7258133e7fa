"""Plotly figure builders (each returns a ``go.Figure``) and the HTML report writer."""

from steerlab.views.pca import PCASummary, pca_summary, principal_directions
from steerlab.views.report import write_html

__all__ = ["PCASummary", "pca_summary", "principal_directions", "write_html"]
