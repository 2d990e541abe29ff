"""The tests, in folders that mirror the code they test (app/, model/, model/flow/). Each folder is a package,
so test modules are named by their path (tests.app.test_api) and two folders may hold files of the same name."""
