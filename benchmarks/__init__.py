"""Speed measured as ratios against baselines run on the same data in the same run, and the GPU check."""
