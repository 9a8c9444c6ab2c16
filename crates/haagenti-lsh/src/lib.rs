//! haagenti-lsh: signature schemes over decoded tensor values (cosine SimHash) and blob
//! bytes (MinHash), and a banded LSH `SimilarityIndex`. Pure computation: never does I/O.
