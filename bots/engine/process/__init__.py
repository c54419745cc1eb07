"""The model in a child process: the frames on its pipes (wire), the child's main (worker), and
the parent's side: one child process (child) and the engine that supervises it (supervisor)."""
