import pandas as pd
import pytest

from qt_assets.research import check_features_present


def test_a_feature_null_on_every_training_row_is_named():
    train = pd.DataFrame({"ret_1d": [0.1, 0.2], "news_sentiment_1d": [None, None]})
    check_features_present(train, ["ret_1d"])
    with pytest.raises(ValueError, match=r"features.set: news_sentiment_1d NULL on all 2 training rows"):
        check_features_present(train, ["ret_1d", "news_sentiment_1d"])
