"""The collection engine: plan the windows of a series, fetch them, check them, write them, and say
what is covered. It knows nothing of tasks, schedules or processes (service/tasks/, service/process/)."""
