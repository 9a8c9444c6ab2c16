//! haagenti-store-fs: a `FragmentStore` on a local filesystem.
