"""The paper's study: experiment definitions, sweeps over them, and the report of their runs."""
