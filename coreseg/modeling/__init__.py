"""The CORE-Seg model, one idea per file: reasoner → prompt adapter → segmenter."""
