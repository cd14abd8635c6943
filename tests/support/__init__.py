"""What the tests share: paths and subprocesses, images, served-app fixtures, rank scripts, references."""
