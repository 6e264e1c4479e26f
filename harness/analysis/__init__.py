"""Reading a store: tables (`report`), figures (`figures`), labels shared by both (`labels`), statistics over
seeds (`stats`) and the regression check against a committed baseline (`regress`)."""
