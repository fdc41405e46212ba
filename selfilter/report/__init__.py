"""The comparison report: seed statistics (``stats``), the run manifest, summary, calibration
checks and markdown (``compare``), and plots (``plots``)."""
