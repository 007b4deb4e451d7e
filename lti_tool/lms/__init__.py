"""What Lifeline does with the LMS's services: roster sync (NRPS) and grade reports (AGS)."""
