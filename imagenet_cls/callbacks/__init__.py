"""Lightning callbacks: prediction writer, evaluation report, graceful shutdown and exact resume."""
