"""Deprecated: the UI-section contract moved to :mod:`webui.sections`; these names stay importable from here
for extensions written against ``webui.ui.tabs`` (docs/extensions.md, "Moved names")."""

from webui.sections import SECTION_SEP, UiSection, UiTab, collect_sections, section_field, section_values

__all__ = ["SECTION_SEP", "UiSection", "UiTab", "collect_sections", "section_field", "section_values"]
