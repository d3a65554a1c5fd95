"""Issues: the table (repository) and the one rule of gathering and building the day's issue
(build), shared by the command line, the scheduler and the console."""
