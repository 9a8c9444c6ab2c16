//! haagenti-store-s3: a `FragmentStore` on S3-compatible object storage.
