"""Feature services: the named, versioned feature sets that models and `feast serve` ask for."""

from feast import FeatureService
from featrec_views import FEATURE_VIEWS

from featrec.core.features import catalog

session_v1 = FeatureService(
    name=catalog.SESSION_SERVICE,
    features=[FEATURE_VIEWS[catalog.SESSION_FEATURES.name]],
    description="In-session features for ranking.",
)

long_term_v1 = FeatureService(
    name=catalog.LONG_TERM_SERVICE,
    features=[FEATURE_VIEWS[name] for name in catalog.BATCH_VIEWS],
    description="Long-term user and item features (daily batch snapshots) for ranking.",
)
