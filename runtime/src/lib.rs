//! Container lifecycle (pause sandbox, app containers in container mode). Built in a later issue.
