"""Training on users' pictures: datasets with captions and buckets, textual inversion (A1111's Train tab)."""
