"""The companion report site (`vsbench report`): see site.build_site and docs/report.md."""

from services.evaluator.report.site import SiteError, SiteOptions, build_site
from services.evaluator.report.thumbs import ImageResolver, dataset_resolver, default_resolver

__all__ = ["ImageResolver", "SiteError", "SiteOptions", "build_site", "dataset_resolver", "default_resolver"]
