"""The built-in tasks, registered by the core plugin like any plugin's: classification and regression.

A task says what a model's outputs mean: its training loss, its metrics, the graph it exports,
how ``predict`` prints it and the quality check compressors use (``hookspecs.register_tasks``).
No module outside a task branches on a task's name: they ask the registry for the task.
"""
