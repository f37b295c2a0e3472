"""What the issues fix as the report format, restated here (not imported from hwocr) so that a change
to the product's own constants fails the tests."""

# metrics.json: the keys the foundation issue lists, before the Vietnamese breakdown
METRIC_KEYS = {
    "cer", "mean_cer", "median_cer", "perfect_match_rate", "substitutions", "deletions", "insertions",
    "substitution_rate", "deletion_rate", "insertion_rate", "wer", "n_samples", "n_failed",
}  # fmt: skip
VIETNAMESE_KEYS = {
    "vi_base_errors", "vi_tone_errors", "vi_diacritic_errors", "vi_base_error_rate", "vi_tone_error_rate",
    "vi_diacritic_error_rate", "vi_cer_no_tone", "vi_cer_no_diacritics",
}  # fmt: skip
# predictions.csv columns, in order
PREDICTION_COLUMNS = (
    "id", "writer", "image", "reference", "prediction", "cer", "substitutions", "deletions", "insertions", "error",
    "guarded",
)  # fmt: skip
